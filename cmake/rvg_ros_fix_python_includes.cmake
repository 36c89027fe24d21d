# Work around the include directories baked into the ROS 2 PyPI wheels (`ros-kilted-*`).
#
# The wheels are built in a manylinux container, so the CMake export files of every message
# package's `<pkg>__rosidl_generator_py` imported target carry
#   INTERFACE_INCLUDE_DIRECTORIES = /opt/python/cp311-cp311/include/python3.11
# a directory that exists only inside that container. CMake refuses to use an imported target
# whose include directory does not exist ("Imported target ... includes non-existent path"), so
# generating Python bindings for our own interfaces (which link against those targets) fails.
#
# rvg_ros_fix_python_includes() rewrites INTERFACE_INCLUDE_DIRECTORIES of every imported
# `*__rosidl_generator_py` target whose include dirs do not all exist, pointing it at the
# Python and NumPy headers of the interpreter we build for. Targets with valid paths (a normal
# ROS 2 install from apt or source) are left untouched, so calling it there is a no-op.
#
# It also handles our OWN `${PROJECT_NAME}__rosidl_generator_py` target: rosidl_generator_py
# gives it PUBLIC include dirs for Python and NumPy, which end up in the exported CMake config.
# In the .venv route the venv lies inside the repository (= CMAKE_SOURCE_DIR), and CMake refuses
# to export an include dir "prefixed in the source directory". Such entries are wrapped in
# $<BUILD_INTERFACE:...>: used for our build, left out of the installed export (where they would
# be wrong anyway - that is exactly how the PyPI wheels got their bogus /opt/python path).
#
# Call it at the END of CMakeLists.txt: rosidl_generate_interfaces() imports further packages
# (service_msgs, action_msgs, unique_identifier_msgs, ...) transitively, and the property is only
# read at generate time, so fixing all imported targets last catches every one of them.
# Needs CMake >= 3.21 for the IMPORTED_TARGETS directory property.

function(rvg_ros_fix_python_includes)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_directory_property(_imported IMPORTED_TARGETS)
  set(_fixed "")
  foreach(_target IN LISTS _imported)
    if(NOT _target MATCHES "__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_broken FALSE)
    foreach(_dir IN LISTS _dirs)
      # Generator expressions can't be checked here; only plain paths are.
      if(NOT _dir MATCHES "^\\$<" AND NOT EXISTS "${_dir}")
        set(_broken TRUE)
      endif()
    endforeach()
    if(_broken)
      set_target_properties(${_target} PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
      list(APPEND _fixed ${_target})
    endif()
  endforeach()

  set(_own "${PROJECT_NAME}__rosidl_generator_py")
  if(TARGET ${_own})
    get_target_property(_dirs ${_own} INTERFACE_INCLUDE_DIRECTORIES)
    if(_dirs)
      set(_new_dirs "")
      foreach(_dir IN LISTS _dirs)
        file(TO_CMAKE_PATH "${_dir}" _norm)
        string(FIND "${_norm}/" "${CMAKE_SOURCE_DIR}/" _in_source)
        string(FIND "${_norm}/" "${CMAKE_BINARY_DIR}/" _in_binary)
        if(_in_source EQUAL 0 OR _in_binary EQUAL 0)
          list(APPEND _new_dirs "$<BUILD_INTERFACE:${_dir}>")
        else()
          list(APPEND _new_dirs "${_dir}")
        endif()
      endforeach()
      set_target_properties(${_own} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
    endif()
  endif()

  if(_fixed)
    list(LENGTH _fixed _n)
    message(STATUS "rvg_ros: reset the Python include dirs of ${_n} imported "
                   "*__rosidl_generator_py targets (PyPI wheel paths that do not exist here)")
  endif()
endfunction()
